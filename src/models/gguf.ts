/**
 * GGUF reader: header, metadata and tensor table (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md).
 * Enough to refuse files that are not GGUF and to know what the runtime needs for memory estimates.
 */
import { open } from 'node:fs/promises';

export const GGUF_MAGIC = 0x46554747; // "GGUF" little-endian

/** Whether a file starts with the GGUF magic (reads 4 bytes; false for a shorter file). */
export async function isGgufFile(path: string): Promise<boolean> {
  const fh = await open(path, 'r');
  try {
    const b = Buffer.alloc(4);
    const { bytesRead } = await fh.read(b, 0, 4, 0);
    return bytesRead === 4 && b.readUInt32LE(0) === GGUF_MAGIC;
  } finally {
    await fh.close();
  }
}

/** llama_ftype values (general.file_type) → names, as llama.cpp prints them. */
export const FILE_TYPES: Record<number, string> = {
  0: 'F32', 1: 'F16', 2: 'Q4_0', 3: 'Q4_1', 7: 'Q8_0', 8: 'Q5_0', 9: 'Q5_1', 10: 'Q2_K', 11: 'Q3_K_S', 12: 'Q3_K_M', 13: 'Q3_K_L',
  14: 'Q4_K_S', 15: 'Q4_K_M', 16: 'Q5_K_S', 17: 'Q5_K_M', 18: 'Q6_K', 19: 'IQ2_XXS', 20: 'IQ2_XS', 21: 'Q2_K_S', 22: 'IQ3_XS',
  23: 'IQ3_XXS', 24: 'IQ1_S', 25: 'IQ4_NL', 26: 'IQ3_S', 27: 'IQ3_M', 28: 'IQ2_S', 29: 'IQ2_M', 30: 'IQ4_XS', 31: 'IQ1_M', 32: 'BF16',
  36: 'TQ1_0', 37: 'TQ2_0', 38: 'MXFP4',
};

/** ggml_type → [block size in elements, bytes per block], for the types GGUF files commonly hold. */
const TYPE_SIZES: Record<number, [number, number]> = {
  0: [1, 4], 1: [1, 2], 2: [32, 18], 3: [32, 20], 6: [32, 22], 7: [32, 24], 8: [32, 34], 9: [32, 36],
  10: [256, 84], 11: [256, 110], 12: [256, 144], 13: [256, 176], 14: [256, 210], 15: [256, 292],
  24: [1, 1], 25: [1, 2], 26: [1, 4], 27: [1, 8], 28: [1, 8], 30: [1, 2],
};

/** Bytes of a tensor's data, when its type is one we know. */
export function tensorBytes(t: { dims: number[]; type: number }): number | undefined {
  const ts = TYPE_SIZES[t.type];
  if (!ts) return undefined;
  const n = t.dims.reduce((a, b) => a * b, 1);
  return Math.ceil(n / ts[0]) * ts[1];
}

export class GgufError extends Error {
  constructor(file: string, why: string) {
    super(`${file} is not a valid GGUF model: ${why}`);
    this.name = 'GgufError';
  }
}

export type GgufValue = number | bigint | boolean | string | GgufValue[];

export interface GgufTensor {
  name: string;
  dims: number[];
  type: number;
  offset: bigint;
}

export interface GgufFile {
  version: number;
  metadata: Record<string, GgufValue>;
  tensors: GgufTensor[];
  /** Byte offset where tensor data starts. */
  dataOffset: number;
  fileSize: number;
}

/** Reads from a file handle through a growing buffer, so big tokenizer arrays need no special case. */
class Reader {
  private buf = Buffer.alloc(0);
  private base = 0; // file offset of buf[0]
  pos = 0; // absolute file offset
  constructor(
    private fh: Awaited<ReturnType<typeof open>>,
    private size: number,
    private file: string,
  ) {}
  private async need(n: number): Promise<void> {
    if (this.pos + n > this.size) throw new GgufError(this.file, `truncated (needs byte ${this.pos + n}, file has ${this.size})`);
    if (this.pos + n <= this.base + this.buf.length) return;
    const start = this.pos;
    const len = Math.min(this.size - start, Math.max(n, 1 << 20));
    const b = Buffer.alloc(len);
    await this.fh.read(b, 0, len, start);
    this.buf = b;
    this.base = start;
  }
  private at(): number {
    return this.pos - this.base;
  }
  async u32(): Promise<number> {
    await this.need(4);
    const v = this.buf.readUInt32LE(this.at());
    this.pos += 4;
    return v;
  }
  async u64(): Promise<bigint> {
    await this.need(8);
    const v = this.buf.readBigUInt64LE(this.at());
    this.pos += 8;
    return v;
  }
  async count(what: string, max: number): Promise<number> {
    const v = await this.u64();
    if (v > BigInt(max)) throw new GgufError(this.file, `implausible ${what} ${v}`);
    return Number(v);
  }
  async str(): Promise<string> {
    const n = await this.count('string length', 1 << 24);
    await this.need(n);
    const s = this.buf.toString('utf8', this.at(), this.at() + n);
    this.pos += n;
    return s;
  }
  async value(type: number, depth = 0): Promise<GgufValue> {
    const sizes: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
    if (type === 8) return this.str();
    if (type === 9) {
      if (depth > 2) throw new GgufError(this.file, 'nested arrays too deep');
      const t = await this.u32();
      const n = await this.count('array length', 1 << 26);
      const out: GgufValue[] = [];
      for (let i = 0; i < n; i++) out.push(await this.value(t, depth + 1));
      return out;
    }
    const size = sizes[type];
    if (size === undefined) throw new GgufError(this.file, `unknown metadata value type ${type}`);
    await this.need(size);
    const o = this.at();
    const b = this.buf;
    const v: GgufValue =
      type === 0 ? b.readUInt8(o) : type === 1 ? b.readInt8(o) : type === 2 ? b.readUInt16LE(o) : type === 3 ? b.readInt16LE(o)
      : type === 4 ? b.readUInt32LE(o) : type === 5 ? b.readInt32LE(o) : type === 6 ? b.readFloatLE(o) : type === 7 ? b.readUInt8(o) !== 0
      : type === 10 ? b.readBigUInt64LE(o) : type === 11 ? b.readBigInt64LE(o) : b.readDoubleLE(o);
    this.pos += size;
    return v;
  }
}

export async function readGguf(file: string): Promise<GgufFile> {
  const fh = await open(file, 'r');
  try {
    const { size } = await fh.stat();
    const r = new Reader(fh, size, file);
    if (size < 24) throw new GgufError(file, `only ${size} bytes`);
    const magic = await r.u32();
    if (magic !== GGUF_MAGIC) throw new GgufError(file, `bad magic 0x${magic.toString(16)} (expected "GGUF")`);
    const version = await r.u32();
    if (version < 2 || version > 3) throw new GgufError(file, `unsupported GGUF version ${version}`);
    const nTensors = await r.count('tensor count', 1 << 20);
    const nKv = await r.count('metadata count', 1 << 16);
    const metadata: Record<string, GgufValue> = {};
    for (let i = 0; i < nKv; i++) {
      const key = await r.str();
      metadata[key] = await r.value(await r.u32());
    }
    const tensors: GgufTensor[] = [];
    for (let i = 0; i < nTensors; i++) {
      const name = await r.str();
      const nd = await r.u32();
      if (nd > 4) throw new GgufError(file, `tensor ${name} has ${nd} dimensions`);
      const dims: number[] = [];
      for (let d = 0; d < nd; d++) dims.push(Number(await r.u64()));
      const type = await r.u32();
      const offset = await r.u64();
      tensors.push({ name, dims, type, offset });
    }
    const align = Number(metadata['general.alignment'] ?? 32);
    const dataOffset = Math.ceil(r.pos / align) * align;
    for (const t of tensors) {
      const bytes = tensorBytes(t);
      const end = BigInt(dataOffset) + t.offset + BigInt(bytes ?? 0);
      if (end > BigInt(size)) throw new GgufError(file, `tensor ${t.name} lies beyond the end of the file (truncated download?)`);
    }
    return { version, metadata, tensors, dataOffset, fileSize: size };
  } finally {
    await fh.close();
  }
}

export interface ModelInfo {
  file: string;
  version: number;
  architecture: string;
  name?: string;
  parameters: number;
  fileType?: string;
  contextLength?: number;
  layers?: number;
  embedding?: number;
  heads?: number;
  kvHeads?: number;
  vocabSize?: number;
  /** Bytes of tensor data (what is mapped into memory). */
  weightsBytes: number;
  /** KV cache bytes per token of context with an f16 cache (K and V, all layers). */
  kvBytesPerToken?: number;
  chatTemplate: boolean;
}

const num = (v: GgufValue | undefined): number | undefined => (typeof v === 'number' ? v : typeof v === 'bigint' ? Number(v) : undefined);

export function describe(g: GgufFile, file: string): ModelInfo {
  const m = g.metadata;
  const arch = String(m['general.architecture'] ?? 'unknown');
  const k = (s: string) => num(m[`${arch}.${s}`]);
  const layers = k('block_count');
  const embedding = k('embedding_length');
  const heads = k('attention.head_count');
  const kvHeads = k('attention.head_count_kv') ?? heads;
  const keyLen = k('attention.key_length') ?? (embedding && heads ? embedding / heads : undefined);
  const valLen = k('attention.value_length') ?? keyLen;
  const tokens = m['tokenizer.ggml.tokens'];
  return {
    file,
    version: g.version,
    architecture: arch,
    name: typeof m['general.name'] === 'string' ? m['general.name'] : undefined,
    parameters: g.tensors.reduce((s, t) => s + t.dims.reduce((a, b) => a * b, 1), 0),
    fileType: num(m['general.file_type']) !== undefined ? (FILE_TYPES[num(m['general.file_type'])!] ?? `type ${num(m['general.file_type'])}`) : undefined,
    contextLength: k('context_length'),
    layers,
    embedding,
    heads,
    kvHeads,
    vocabSize: Array.isArray(tokens) ? tokens.length : undefined,
    weightsBytes: Math.max(0, g.fileSize - g.dataOffset),
    kvBytesPerToken: layers && kvHeads && keyLen && valLen ? layers * kvHeads * (keyLen + valLen) * 2 : undefined,
    chatTemplate: typeof m['tokenizer.chat_template'] === 'string',
  };
}

export async function inspectModel(file: string): Promise<ModelInfo> {
  return describe(await readGguf(file), file);
}
