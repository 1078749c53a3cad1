/** Writes small, valid GGUF v3 files for tests (llama.cpp's gguf-py is not needed for these). */
import { writeFileSync } from 'node:fs';

type Val = { t: 'u32'; v: number } | { t: 'str'; v: string } | { t: 'f32'; v: number } | { t: 'strs'; v: string[] };

function str(s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(b.length));
  return Buffer.concat([len, b]);
}
const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
};
const u64 = (n: number) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
};

export function gguf(meta: Record<string, Val>, tensors: { name: string; dims: number[] }[] = [], dataBytes = 0): Buffer {
  const parts: Buffer[] = [Buffer.from('GGUF'), u32(3), u64(tensors.length), u64(Object.keys(meta).length)];
  for (const [k, val] of Object.entries(meta)) {
    parts.push(str(k));
    if (val.t === 'u32') parts.push(u32(4), u32(val.v));
    else if (val.t === 'f32') {
      const b = Buffer.alloc(4);
      b.writeFloatLE(val.v);
      parts.push(u32(6), b);
    } else if (val.t === 'str') parts.push(u32(8), str(val.v));
    else parts.push(u32(9), u32(8), u64(val.v.length), ...val.v.map(str));
  }
  let off = 0;
  for (const t of tensors) {
    parts.push(str(t.name), u32(t.dims.length), ...t.dims.map(u64), u32(0), u64(off));
    off += t.dims.reduce((a, b) => a * b, 1) * 4;
  }
  let head = Buffer.concat(parts);
  const pad = (32 - (head.length % 32)) % 32;
  head = Buffer.concat([head, Buffer.alloc(pad)]);
  return Buffer.concat([head, Buffer.alloc(Math.max(off, dataBytes), 1)]);
}

/** A llama-shaped GGUF header with f32 tensors filled with ones (not loadable weights; a valid file). */
export function writeTestGguf(file: string, opts: { layers?: number; embd?: number; extraBytes?: number } = {}): Buffer {
  const layers = opts.layers ?? 2;
  const embd = opts.embd ?? 64;
  const tensors = [{ name: 'token_embd.weight', dims: [embd, 100] }];
  for (let i = 0; i < layers; i++) tensors.push({ name: `blk.${i}.attn_q.weight`, dims: [embd, embd] });
  const buf = gguf(
    {
      'general.architecture': { t: 'str', v: 'llama' },
      'general.name': { t: 'str', v: 'test' },
      'general.file_type': { t: 'u32', v: 0 },
      'llama.context_length': { t: 'u32', v: 2048 },
      'llama.block_count': { t: 'u32', v: layers },
      'llama.embedding_length': { t: 'u32', v: embd },
      'llama.attention.head_count': { t: 'u32', v: 4 },
      'llama.attention.head_count_kv': { t: 'u32', v: 2 },
      'tokenizer.ggml.tokens': { t: 'strs', v: ['<unk>', '<s>', '</s>', 'a', 'b'] },
    },
    tensors,
    opts.extraBytes ?? 0,
  );
  writeFileSync(file, buf);
  return buf;
}
